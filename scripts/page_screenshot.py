"""The page of `dnd serve` in headless Chromium (Debian's chromium and chromium-driver, driven by selenium):
pick a label by searching, press Generate, wait for the images, save a screenshot.

    python scripts/page_screenshot.py out/model --search water --n 4 -o docs/serve-page.png

tests/dnd_sdk/test_page.py drives the page with the same functions.
"""
import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

# Debian's packages (make system-deps): selenium is given both, so it never looks for a browser to download
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"


def chromium(width: int = 1100, height: int = 860) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}"):  # no sandbox: CI runs as root
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


def set_value(driver: webdriver.Chrome, element_id: str, value: object) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))


def generate_on_page(driver: webdriver.Chrome, base: str, search: str = "", n: int = 2, seed: int = 0,
                     partial_images: int = 2, timeout: float = 120) -> list:
    """Open the page, search for a label, set n, seed and partial images, press Generate and wait for every
    image; returns the <figure> of each."""
    driver.get(base)
    wait = WebDriverWait(driver, timeout)
    wait.until(lambda d: d.find_element(By.ID, "labels").get_attribute("value"))  # a label is chosen at once
    if search:
        set_value(driver, "search", search)
    for element_id, value in (("n", n), ("seed", seed), ("partial_images", partial_images)):
        set_value(driver, element_id, value)
    driver.find_element(By.ID, "generate").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#images figure.done")) == n
               or "error" in (d.find_element(By.ID, "status").get_attribute("class") or ""))
    return driver.find_elements(By.CSS_SELECTOR, "#images figure")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="an exported model folder")
    p.add_argument("-o", "--out", type=Path, required=True, help="the screenshot, a PNG")
    p.add_argument("--search", default="", help="what to type into the label search")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    server = subprocess.Popen([str(Path(sys.executable).parent / "dnd"), "serve", str(a.model), "--port", "0",
                               "--threads", "1", "--backend", "onnxruntime-cpu"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        match = re.search(r"on (http://127\.0\.0\.1:\d+)", server.stdout.readline())
        if not match:
            raise SystemExit("dnd serve did not say where it serves")
        driver = chromium()
        try:
            generate_on_page(driver, match[1], a.search, a.n, a.seed)
            driver.save_screenshot(str(a.out))
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(30)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
