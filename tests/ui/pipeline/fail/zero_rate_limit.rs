#[genflow::pipeline{ #[rate_limit(0, per = std::time::Duration::from_secs(1))] a: A }]
struct Flow;

struct A;

fn main() {}
