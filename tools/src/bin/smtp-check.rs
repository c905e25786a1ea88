//! `smtp-check`: see [`tambo_tools::smtp_check`].

fn main() {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(tambo_tools::smtp_check::main(&args));
}
