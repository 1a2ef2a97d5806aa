#[genflow::pipeline{ a: A, #[fused] #[replicas(2)] b: B }]
struct Flow;

struct A;
struct B;

fn main() {}
