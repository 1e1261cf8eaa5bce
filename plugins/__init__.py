"""canbridge's built-in plugins. Each module is registered through its own entry point in
the `canbridge.plugins` group, exactly as a third-party plugin would be."""
