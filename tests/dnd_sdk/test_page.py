"""The page of `dnd serve` in real headless Chromium, driven by selenium: search a label, press Generate,
see the partial images and then the images, each with its label, seed and a PNG to download."""
import base64
import shutil

import httpx
import pytest
from live_server import ThreadedServer

from dnd_sdk import Generator

pytest.importorskip("selenium")
if not (shutil.which("chromium") and shutil.which("chromedriver")):
    pytest.skip("needs Debian's chromium and chromium-driver (make system-deps)", allow_module_level=True)

from page_screenshot import chromium, generate_on_page  # noqa: E402  (needs selenium)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def test_generate_on_the_page_shows_the_images_with_label_seed_and_png(tiny_model_dir, browser, tmp_path):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1, max_batch=16) as gen:
        with ThreadedServer(gen) as base:
            figures = generate_on_page(browser, base, search="do", n=2, seed=5, partial_images=1)
            labels = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#labels option")]
            assert labels == ["dog"]  # the search leaves the labels that match
            assert len(figures) == 2 and all("done" in f.get_attribute("class") for f in figures)
            reference = httpx.post(f"{base}/v1/images", json={"labels": ["dog"], "num": 2, "seed": 5}).json()
            for j, (figure, image) in enumerate(zip(figures, reference["images"])):
                img = figure.find_element(By.TAG_NAME, "img")
                assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) \
                    == gen.manifest.image["width"]
                assert figure.find_element(By.TAG_NAME, "figcaption").text == f"dog · seed 5 · image {j}"
                assert figure.get_attribute("data-partials") == "1"  # a partial image was shown first
                link = figure.find_element(By.TAG_NAME, "a")
                assert link.get_attribute("download") == f"dog-seed5-{j}.png"
                href = link.get_attribute("href")
                assert base64.b64decode(href.removeprefix("data:image/png;base64,")) == base64.b64decode(image["png"])
            assert browser.find_element(By.ID, "status").text == "2 images of dog, seed 5"
            assert browser.save_screenshot(str(tmp_path / "page.png"))
            assert (tmp_path / "page.png").read_bytes().startswith(b"\x89PNG")


def test_the_page_opens_with_a_label_and_the_model_defaults_and_shows_errors(tiny_model_dir, browser):
    with Generator(tiny_model_dir, backend="onnxruntime-cpu", threads=1, max_batch=16) as gen:
        with ThreadedServer(gen) as base:
            figures = generate_on_page(browser, base, n=1)
            assert browser.find_element(By.ID, "labels").get_attribute("value") == "cat"
            assert float(browser.find_element(By.ID, "cfg_scale").get_attribute("value")) == 2.0
            assert len(figures) == 1 and "done" in figures[0].get_attribute("class")
            browser.find_element(By.ID, "temperature").clear()
            browser.find_element(By.ID, "temperature").send_keys("-1")
            browser.find_element(By.ID, "generate").click()
            status = browser.find_element(By.ID, "status")  # the server checks the settings, as for any client
            WebDriverWait(browser, 30).until(lambda d: status.get_attribute("class") == "error")
            assert "temperature must be >= 0" in status.text
            assert gen.scheduler.queue_depth == 0
