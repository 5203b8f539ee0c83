//! `msclip-analyze`: the front-end lives in the library ([`msclip::app::analyze`]) so that its argument
//! parsing and dispatch are testable; the binary only calls it.

fn main() -> std::process::ExitCode {
    msclip::app::analyze::main()
}
