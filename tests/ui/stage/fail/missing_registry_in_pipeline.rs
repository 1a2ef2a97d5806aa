//! A `#[genflow::stage]` block without `type Registry`, used in a pipeline
//! that is started: the macro's error is the only one.
use genflow::{Emitter, Stage};

#[derive(Default)]
struct C(u64);

#[genflow::stage]
impl Stage for C {
    type In = u64;
    type Out = u64;

    async fn process(&mut self, n: u64, out: &mut Emitter<u64>) {
        self.0 += n;
        out.emit(self.0).await;
    }
}

#[genflow::pipeline{ c: C }]
struct P;

async fn used() -> Result<(), genflow::SendError<u64>> {
    let p = P::builder().replicas("c", 2).start().await.expect("valid sizes");
    p.send(1).await?;
    p.shutdown().await;
    Ok(())
}

fn main() {
    drop(used());
}
