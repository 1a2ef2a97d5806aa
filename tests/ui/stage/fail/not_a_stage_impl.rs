#[derive(Default)]
struct Echo;

#[genflow::stage]
impl Clone for Echo {
    fn clone(&self) -> Self {
        Echo
    }
}

fn main() {
    let _ = Echo.clone();
}
