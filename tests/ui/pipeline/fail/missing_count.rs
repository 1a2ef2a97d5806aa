#[genflow::pipeline{ #[replicas(ordered)] a: A, #[replicas] b: A }]
struct Flow;

struct A;

fn main() {}
