//! `msclip-data`: the front-end lives in the library ([`msclip::app::data`]) so that its argument
//! parsing and dispatch are testable; the binary only calls it.

fn main() -> std::process::ExitCode {
    msclip::app::data::main()
}
