#[genflow::pipeline{ #[batch(size = 0, timeout = std::time::Duration::from_millis(50))] a: A }]
struct Flow;

struct A;

fn main() {}
