#[genflow::pipeline{ #[concurrency(0)] a: A }]
struct Flow;

struct A;

fn main() {}
