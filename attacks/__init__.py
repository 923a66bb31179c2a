"""Built-in attacks, one plugin file each, written only against ``robustbench_lta.plugins``.

Installed as ``robustbench_lta.builtin_attacks``; the registry imports every module here.
"""
