use genflow::Emitter;

#[genflow::stage]
async fn twice(n: u64, out: &mut Emitter<u64>) -> u64 {
    out.emit(n).await;
    n
}

fn main() {
    let _ = twice;
}
