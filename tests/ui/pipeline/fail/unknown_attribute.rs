#[genflow::pipeline{ #[parallel(2)] a: A }]
struct Flow;

struct A;

fn main() {}
