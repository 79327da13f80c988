// Copyright 2026 the Valise authors. Apache-2.0 license.
/**
 * The status page in a real browser: headless Chromium (Debian's `chromium`, driven by
 * `playwright-core`) logs in with an admin token on a real `serve` process holding real sessions
 * whose user ids, artifact names and errors carry `<script>` and event-handler markup. The page
 * shows that text literally and runs none of it; a screenshot is taken and checked (its
 * dimensions, that it is not blank, that the heading's pixels are drawn).
 *
 * @module
 */
import { equal, ok } from "node:assert/strict";
import { join } from "node:path";
import { type Browser, chromium, type Page } from "playwright-core";
import { connect } from "@valise/client";
import { startServer } from "./_server.ts";
import { removeTree } from "./_util.ts";

const CHROMIUM = "/usr/bin/chromium";
const ADMIN = "admin-token-5e6f7a8b9c0d";
const HOSTILE_USER = `<script>window.__pwned = "user"</script>`;
const HOSTILE_FILE = `<img src=x onerror="window.__pwned='file'">.txt`;
const HOSTILE_MISSING = `files/<svg onload="window.__pwned='error'">`;
const VIEWPORT = { width: 1280, height: 800 };

/** Why the browser cannot run here, if it cannot. */
function chromiumMissing(): string | undefined {
  try {
    const out = new Deno.Command(CHROMIUM, { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync();
    return out.success ? undefined : `${CHROMIUM} --version failed`;
  } catch {
    return `${CHROMIUM} is not installed (Debian package chromium; deno task setup installs it)`;
  }
}

const missing = chromiumMissing();

/** Decodes a PNG in a blank page of the browser and measures it. */
async function measure(
  browser: Browser,
  png: Uint8Array,
  box: { x: number; y: number; width: number; height: number },
): Promise<
  { width: number; height: number; colors: number; inkInBox: number; inkOutside: number }
> {
  const page = await browser.newPage();
  try {
    // Browser code, as text: this program's types know no DOM.
    const args = JSON.stringify({
      b64: btoa(Array.from(png, (c) => String.fromCharCode(c)).join("")),
      box,
    });
    return await page.evaluate(`(async ({ b64, box }) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
      const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
      const ctx = canvas.getContext("2d");
      ctx.drawImage(bitmap, 0, 0);
      const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
      const colors = new Set();
      let inkInBox = 0;
      let inkOutside = 0;
      for (let y = 0; y < bitmap.height; y++) {
        for (let x = 0; x < bitmap.width; x++) {
          const i = (y * bitmap.width + x) * 4;
          colors.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
          const dark = data[i] + data[i + 1] + data[i + 2] < 200;
          const inBox = x >= box.x && x < box.x + box.width && y >= box.y && y < box.y + box.height;
          if (dark && inBox) inkInBox++;
          else if (dark) inkOutside++;
        }
      }
      return { width: bitmap.width, height: bitmap.height, colors: colors.size, inkInBox, inkOutside };
    })(${args})`);
  } finally {
    await page.close();
  }
}

async function pwned(page: Page): Promise<unknown> {
  return await page.evaluate("window.__pwned");
}

Deno.test({
  name: missing
    ? `the status page in headless Chromium (ignored: ${missing})`
    : "the status page in headless Chromium: shows hostile names literally, runs none, screenshot",
  ignore: missing !== undefined,
  async fn() {
    const tmp = await Deno.makeTempDir({ prefix: "valise-status-" });
    const admins = join(tmp, "admin-tokens");
    await Deno.writeTextFile(admins, `${ADMIN}\n`);
    const server = await startServer({
      dataDir: join(tmp, "data"),
      args: ["--admin-token-file", admins, "--metrics-port", "0"],
    });
    let browser: Browser | undefined;
    try {
      const line = await server.waitForLog(/status page on http:\/\/\S+\/status/);
      const statusUrl = line.match(/http:\/\/\S+\/status/)![0];
      // Real sessions: a hostile user id and artifact name, a shared archive, a recent error.
      const remote = `sc://127.0.0.1:${server.port}/`;
      const evil = connect(remote, { userId: HOSTILE_USER });
      const ada = connect(`${remote};user_id=ada`);
      const hostileFile = join(tmp, HOSTILE_FILE);
      await Deno.writeTextFile(hostileFile, "payload");
      await evil.addArtifacts(hostileFile, { file: true });
      const src = join(tmp, "src");
      await Deno.mkdir(src);
      await Deno.writeTextFile(join(src, "lib.py"), "X = 1\n");
      const tar = join(tmp, "env.tar");
      ok(
        (await new Deno.Command("tar", { args: ["-cf", tar, "-C", src, "lib.py"] }).output())
          .success,
      );
      await ada.addArtifacts(`${tar}#env`, { archive: true });
      await evil.addArtifacts(`${tar}#env`, { archive: true });
      await evil.remove(HOSTILE_MISSING).catch(() => {});
      evil.close();
      ada.close();

      browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
      const page = await browser.newPage({ viewport: VIEWPORT });
      const dialogs: string[] = [];
      page.on("dialog", (d) => {
        dialogs.push(d.message());
        d.dismiss().catch(() => {});
      });
      // Without a token: the login form, and nothing of the status.
      const first = await page.goto(statusUrl);
      equal(first?.status(), 401);
      equal(await page.title(), "Valise status: log in");
      ok(!(await page.content()).includes("ada"));
      await page.fill("input[name=token]", "not-the-token");
      await Promise.all([page.waitForURL(/\/status\/login$/), page.click("button")]);
      ok(
        (await page.textContent("body"))!.includes(
          "That is not one of this server's admin tokens.",
        ),
      );
      await page.goto(statusUrl);
      await page.fill("input[name=token]", ADMIN);
      const [res] = await Promise.all([
        page.waitForResponse((r) => new URL(r.url()).pathname === "/status" && r.status() === 200),
        page.click("button"),
      ]);
      equal(res.headers()["content-security-policy"]?.includes("default-src 'none'"), true);
      equal(await page.title(), "Valise status");
      // The token is nowhere a script could read it.
      equal(await page.evaluate("document.cookie"), "");
      ok(!page.url().includes(ADMIN));

      // The hostile text is shown as text, and nothing of it became markup or ran.
      const sessions = await page.innerText("#sessions");
      ok(sessions.includes(HOSTILE_USER), sessions);
      ok(sessions.includes("ada"), sessions);
      const artifacts = await page.innerText("#artifacts");
      ok(artifacts.includes(`files/${HOSTILE_FILE}`), artifacts);
      ok(artifacts.includes("archives/env.tar#env"), artifacts);
      const errors = await page.innerText("#errors");
      ok(errors.includes(JSON.stringify(HOSTILE_MISSING)), errors);
      ok(errors.includes("ARTIFACT_NOT_FOUND"), errors);
      // The shared tree: used by both sessions, found ready-made by the second add.
      const tree = await page.evaluate<string[]>(
        `[...document.querySelectorAll("#trees tbody tr:first-child td")].map((td) => td.textContent)`,
      );
      equal(tree[3], "2", tree.join(" | "));
      equal(tree[4], "1", tree.join(" | "));
      equal(
        await page.evaluate(`document.querySelectorAll("script, img, svg, iframe").length`),
        0,
      );
      equal(await pwned(page), undefined);
      equal(dialogs.length, 0, dialogs.join("; "));

      // The screenshot: the viewport's width, the whole page's height, drawn, with the heading's
      // text in its pixels.
      const heading = (await page.locator("h1").boundingBox())!;
      const png = await page.screenshot({ fullPage: true });
      const pageHeight = await page.evaluate<number>("document.documentElement.scrollHeight");
      await Deno.writeFile(join(tmp, "status.png"), png);
      const m = await measure(browser, png, heading);
      equal(m.width, VIEWPORT.width);
      equal(m.height, Math.max(VIEWPORT.height, pageHeight));
      ok(m.colors > 10, `a blank screenshot: ${m.colors} colours`);
      ok(m.inkInBox > 50, `no text drawn where the heading is: ${m.inkInBox} dark pixels`);
      ok(m.inkOutside > 500, `no text drawn below the heading: ${m.inkOutside} dark pixels`);

      // Logged out, the page is closed again.
      await page.click("form[action='/status/logout'] button");
      await page.waitForURL(statusUrl);
      equal(await page.title(), "Valise status: log in");
      equal(await pwned(page), undefined);
    } finally {
      await browser?.close();
      await server.stop();
      await removeTree(tmp);
    }
  },
});
