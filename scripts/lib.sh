# Shared helpers for the scripts (sourced, not run).

# Where cargo puts build output: honours CARGO_TARGET_DIR and
# build.target-dir, as cargo itself resolves them.
target_dir() {
  cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}
