#[genflow::pipeline{}]
struct Flow;

fn main() {}
