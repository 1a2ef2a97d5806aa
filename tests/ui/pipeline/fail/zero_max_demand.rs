#[genflow::pipeline{ #[max_demand(0)] a: A }]
struct Flow;

struct A;

fn main() {}
