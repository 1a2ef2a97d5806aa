#[genflow::stage]
fn tick() -> u64 {
    1
}

fn main() {
    tick();
}
