//! A stage function with a mistake, used in a pipeline: the mistake is the
//! only error.

#[genflow::stage]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[genflow::stage]
fn show(n: u64) -> String {
    n.to_string()
}

#[genflow::pipeline{ add: Add<Sums>, show: Show<Sums> }]
struct Sums;

fn main() {
    let _ = add(1, 2);
}
