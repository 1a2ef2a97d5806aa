#[genflow::pipeline{ #[concurrency(4, unordered)] a: A }]
struct Flow;

struct A;

fn main() {}
