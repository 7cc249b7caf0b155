#[global_allocator]
static ALLOCATOR: syncflow::allocator::Allocator = syncflow::allocator::Allocator;

fn main() -> std::process::ExitCode {
    syncflow::app::main()
}
