fn main() {
    print!("{}", conveyor_store::redis::schema::markdown());
}
