#[genflow::pipeline{ #[replicas(0)] a: A }]
struct Flow;

struct A;

fn main() {}
