#[genflow::make_registry{ #[replicas(2)] a: A }]
struct App;

struct A;

fn main() {}
