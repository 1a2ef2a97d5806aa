#[genflow::pipeline{ a: A, a: A }]
struct Flow;

struct A;

fn main() {}
