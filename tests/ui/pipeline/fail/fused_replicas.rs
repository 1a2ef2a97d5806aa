#[genflow::pipeline{ #[replicas(4)] a: A, #[fused] b: B }]
struct Flow;

struct A;
struct B;

fn main() {}
