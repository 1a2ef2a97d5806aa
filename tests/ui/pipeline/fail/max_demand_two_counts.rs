#[genflow::pipeline{ #[max_demand(4, 8)] a: A }]
struct Flow;

struct A;

fn main() {}
