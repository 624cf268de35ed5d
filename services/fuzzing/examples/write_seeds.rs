//! Writes every target's seeds into fuzz/corpus/TARGET/seed-N (run after
//! changing `seeds()`): `cargo run -p conveyor-fuzzing --example write_seeds`.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut counts = std::collections::HashMap::new();
    for (name, seed) in conveyor_fuzzing::seeds() {
        let count = counts.entry(name).or_insert(0);
        std::fs::create_dir_all(root.join(name))?;
        std::fs::write(root.join(name).join(format!("seed-{count}")), seed)?;
        *count += 1;
    }
    println!("wrote {} seeds", counts.values().sum::<i32>());
    Ok(())
}
