"""Engine-free logic over records: question sources, teachers, verifiers, filters, dedup,
decontamination and recipes. May import `storage`; never Prefect, never torch (except the
local-model teacher)."""
