#[genflow::pipeline{ #[replicas(2, fast)] a: A }]
struct Flow;

struct A;

fn main() {}
