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
}

impl Cli {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            port: self.port,
            data_dir: self.data_dir.clone(),
        }
    }
}
