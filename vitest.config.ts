import { defineConfig } from "vitest/config";

// One vitest project per test tier (DESIGN.md "Tests"): the reporter labels each file with its tier.
export default defineConfig({
  test: {
    projects: [
      { test: { name: "types", include: ["test/types/**/*.test.ts"] } },
      { test: { name: "unit", include: ["test/unit/**/*.test.ts"], testTimeout: 60_000 } },
      { test: { name: "codegen", include: ["test/codegen/**/*.test.ts"], testTimeout: 120_000 } },
      { test: { name: "gpu", include: ["test/gpu/**/*.test.ts"], testTimeout: 300_000 } },
    ],
  },
});
