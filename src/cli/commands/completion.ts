/** `lessor completion bash|zsh|fish`: a completion script for the whole command tree, built from the program at call time. */
import { Argument, type Command } from "commander";
import type { Cli } from "../cli.js";

const SHELLS = ["bash", "zsh", "fish"] as const;

export function registerCompletion(program: Command, cli: Cli): void {
  program
    .command("completion")
    .description("print a shell completion script for every lessor command and option")
    .addArgument(new Argument("<shell>", "bash, zsh or fish").choices(SHELLS))
    .addHelpText(
      "after",
      "\nExamples:\n  source <(lessor completion bash)                      # in ~/.bashrc\n  source <(lessor completion zsh)                       # in ~/.zshrc, after compinit\n  lessor completion fish > ~/.config/fish/completions/lessor.fish",
    )
    .action((shell: (typeof SHELLS)[number]) =>
      cli.run(async () => {
        const scripts = await import("../format/completion-scripts.js");
        const text = shell === "bash" ? scripts.bashScript(program) : shell === "zsh" ? scripts.zshScript(program) : scripts.fishScript(program);
        cli.stdout.write(text);
      }),
    );
}
