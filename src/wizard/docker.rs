//! `docker compose up -d --build`.

use super::*;

pub(super) fn start_docker() -> Result<(), String> {
    say!("Starting the services: docker compose up -d --build");
    let status = Command::new("docker")
        .args(["compose", "up", "-d", "--build"])
        .status()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => "docker was not found on PATH; install Docker (with the compose plugin), or start the server yourself and pass --no-docker".to_string(),
            _ => format!("cannot run docker: {e}"),
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`docker compose up -d --build` failed ({status}); see its output above, or start the server yourself and pass --no-docker"
        ))
    }
}
