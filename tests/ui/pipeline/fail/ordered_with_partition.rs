#[genflow::pipeline{ #[replicas(2, ordered, partition_by = key)] a: A }]
struct Flow;

struct A;

fn main() {}
