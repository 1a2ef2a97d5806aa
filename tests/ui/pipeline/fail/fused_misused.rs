#[genflow::pipeline{ #[replicas(1, ordered)] a: A, #[fused(yes)] b: B, #[fused] #[fused] c: C }]
struct Flow;

struct A;
struct B;
struct C;

fn main() {}
