//! Command-line flags: they override every other configuration layer.

use std::path::PathBuf;

use clap::Parser;

use crate::configuration::Overrides;

#[derive(Debug, Parser)]
#[command(name = "wagate", version, about = "Multi-tenant WhatsApp gateway")]
pub struct Cli {
    /// An extra YAML configuration file, applied over config/base.yaml and the environment file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The HTTP port (overrides application.port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Where wagate keeps its state, including the private database (application.data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Run against the built-in WhatsApp simulator instead of WhatsApp (needs a
    /// build with `--features sandbox`; such a build always runs in sandbox mode).
    #[arg(long)]
    pub sandbox: bool,
}

impl Cli {
    /// Why these flags cannot run on this build, if they cannot.
    pub fn unsupported(&self) -> Option<&'static str> {
        (self.sandbox && !crate::whatsapp_network::WhatsAppNetwork::sandbox_build()).then_some(
            "--sandbox needs a sandbox build: `cargo run --features sandbox -- --sandbox`",
        )
    }

    pub fn overrides(&self) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            port: self.port,
            data_dir: self.data_dir.clone(),
        }
    }
}
