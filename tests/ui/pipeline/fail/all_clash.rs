#[genflow::pipeline{ x: A, x_all: A }]
struct Flow;

struct A;

fn main() {}
