/** `lessor secret` (not built yet). */
import type { Command } from "commander";
import type { Cli } from "../cli.js";

export function registerSecret(_program: Command, _cli: Cli): void {}
