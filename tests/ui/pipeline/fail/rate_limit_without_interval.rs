#[genflow::pipeline{ #[rate_limit(10)] a: A }]
struct Flow;

struct A;

fn main() {}
