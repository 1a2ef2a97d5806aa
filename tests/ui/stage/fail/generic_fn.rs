#[genflow::stage]
fn show<T: ToString>(item: T) -> String {
    item.to_string()
}

fn main() {
    show(1);
}
