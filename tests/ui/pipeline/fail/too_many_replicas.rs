#[genflow::pipeline{ #[replicas(65537)] a: A, #[replicas(1000000, ordered)] b: A }]
struct Flow;

struct A;

fn main() {}
