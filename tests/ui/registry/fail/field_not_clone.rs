struct NotClone;

#[genflow::make_registry{}]
struct App {
    field: NotClone,
}

fn main() {}
