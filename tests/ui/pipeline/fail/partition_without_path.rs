#[genflow::pipeline{ #[replicas(2, partition_by)] a: A, #[replicas(2, partition_by = )] b: A }]
struct Flow;

struct A;

fn main() {}
