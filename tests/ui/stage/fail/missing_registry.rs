use genflow::{Emitter, Stage};

#[derive(Default)]
struct Sum(u64);

#[genflow::stage]
impl Stage for Sum {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        self.0 += n;
        out.emit(self.0).await;
    }
}

fn main() {
    let _ = Sum(0);
}
