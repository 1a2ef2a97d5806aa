#[genflow::stage]
fn show(n: u64) -> impl std::fmt::Display {
    n
}

fn main() {
    show(1);
}
