use std::process::ExitCode;

use clap::Parser;
use wagate::app::{Application, RunOptions};
use wagate::cli::Cli;
use wagate::configuration::Settings;

/// Exit code for an invalid configuration (distinct from a runtime failure, 1).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // A .env file is read first when present (the convention of the technology-stack document); real variables win.
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    if let Some(why) = cli.unsupported() {
        eprintln!("wagate: {why}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let settings = match Settings::load(&cli.overrides()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wagate: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    wagate::telemetry::init(&settings.log);
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(
            settings,
            RunOptions {
                handle_signals: true,
                network: None,
            },
        )
        .await?;
        tracing::info!(port = app.port(), "wagate listening");
        app.run_until_stopped().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "wagate stopped with an error");
            eprintln!("wagate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
