"""The upload page in a real headless browser (Debian's chromium, driven by Selenium)."""

import os
import shutil

import numpy as np
import pytest

from tests.conftest import write_image
from tests.deploy.test_serve import Server

pytestmark = pytest.mark.slow
webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no chromium + chromedriver (apt-get install chromium "
                                                      "chromium-driver)")
def test_upload_page_shows_the_overlay_and_nail_count(onnx_run, synth_data, tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = synth_data / "images" / sorted(os.listdir(synth_data / "images"))[0]
    server = Server(onnx_run / "model.onnx")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=900,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        browser.get(server.url + "/")
        assert browser.title == "nailseg"
        browser.find_element(By.ID, "file").send_keys(str(photo))
        browser.find_element(By.ID, "send").click()
        status = browser.find_element(By.ID, "status")
        WebDriverWait(browser, 60).until(lambda _: "nails" in status.text or "error" in status.text)
        assert "error" not in status.text, status.text
        assert status.get_attribute("data-nails").isdigit()
        loaded = browser.execute_script("const i = document.getElementById('overlay');"
                                        "return !i.hidden && i.complete && i.naturalWidth;")
        assert loaded == 96  # the overlay has the photo's own size
        shown = browser.execute_script("const i = document.getElementById('original');"
                                       "return !document.getElementById('result').hidden && i.complete && i.naturalWidth;")
        assert shown == 96  # the original beside it
        posts = browser.execute_script("return performance.getEntriesByType('resource')"
                                       ".filter((e) => e.name.includes('/v1/segment')).length;")
        assert posts == 1  # one upload, one request, one inference
        assert browser.find_element(By.ID, "download").get_attribute("href").startswith("data:image/png;base64,")
        assert "threshold" in browser.find_element(By.ID, "model").text
        browser.save_screenshot(str(tmp_path / "page.png"))

        bad = write_image(tmp_path / "notes.png", np.zeros((4, 4, 3), np.uint8))
        bad.write_bytes(b"this is text")
        browser.find_element(By.ID, "file").send_keys(str(bad))
        browser.find_element(By.ID, "send").click()
        WebDriverWait(browser, 30).until(lambda _: "error" in status.text)
        assert "not an image" in status.text
    finally:
        browser.quit()
        server.stop()
