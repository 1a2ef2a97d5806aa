#[genflow::pipeline{ #[fused] a: A, b: B }]
struct Flow;

struct A;
struct B;

fn main() {}
