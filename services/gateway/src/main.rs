// mimalloc: with glibc's allocator, malloc and free took a quarter of the gateway's
// instructions per proxied request (callgrind under wrk).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    dozen_kit::service::main::<dozen_gateway::Gateway>()
}
