//! A stage function's type named without its pipeline: one error, asking
//! for `A<P>`; code using the pipeline adds none.

#[genflow::stage]
fn a(x: u64) -> u64 {
    x
}

#[genflow::stage]
fn b(x: u64) -> String {
    x.to_string()
}

#[genflow::pipeline{ a: A, b: B<P> }]
struct P;

async fn used() -> Result<(), genflow::SendError<u64>> {
    let p = P::start().await;
    p.send(1).await?;
    p.shutdown().await;
    Ok(())
}

fn main() {
    drop(used());
}
