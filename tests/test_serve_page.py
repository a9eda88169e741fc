#!/usr/bin/python3
"""vit serve's page in a real browser (headless Chromium through Selenium): it lists the
models, shows the top-k bars and the explanation overlay for a chosen image, switches model,
shows an error for a file that is not an image, and loads nothing from another origin.
usage: test_serve_page.py path/to/vit path/to/datasets [SCREENSHOT.png]
(the README's docs/serve-page.png is such a screenshot)"""
import os
import shutil
import sys
import tempfile

from serve_util import Server

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    print("test_serve_page: skipped: python3-selenium is missing (tools/install-deps.sh --test)")
    sys.exit(77)  # CTest's SKIP_RETURN_CODE
for tool in ("chromium", "chromedriver"):
    if not shutil.which(tool):
        print(f"test_serve_page: skipped: {tool} is missing (tools/install-deps.sh --test)")
        sys.exit(77)

Server.vit = sys.argv[1]
SAMPLES = os.path.abspath(os.path.join(sys.argv[2], "samples"))
screenshot = sys.argv[3] if len(sys.argv) > 3 else None
failures = []


def check(name, ok, detail=""):
    if not ok:
        failures.append(name)
        print(f"FAIL: {name} {detail}".rstrip())


options = webdriver.ChromeOptions()
options.binary_location = shutil.which("chromium")
for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1100,800", "--proxy-server=direct://", "--proxy-bypass-list=*"):
    options.add_argument(arg)
profile = tempfile.mkdtemp(prefix="vit-chromium-")
options.add_argument(f"--user-data-dir={profile}")

with Server() as server:
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.set_page_load_timeout(30)
        wait = WebDriverWait(driver, 30)
        driver.get(f"http://127.0.0.1:{server.port}/")
        wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) == 2)
        names = [o.get_attribute("value") for o in Select(driver.find_element(By.ID, "model")).options]
        check("the models listed", names == ["vit_fmnist", "cnn_resnet8_fmnist"], str(names))
        check("the model's facts shown", "10 classes" in driver.find_element(By.ID, "meta").text)

        def choose(path):
            driver.execute_script("document.getElementById('file').hidden = false;")
            driver.find_element(By.ID, "file").send_keys(path)

        def overlay_src():
            return driver.find_element(By.ID, "overlay").get_attribute("src") or ""

        choose(os.path.join(SAMPLES, "sneaker_00009.png"))
        wait.until(lambda d: d.find_element(By.ID, "result").is_displayed() and
                   len(d.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 5)
        wait.until(lambda d: d.execute_script(
            "const i = document.getElementById('overlay'); return i.complete && i.naturalWidth;"))
        first = driver.find_elements(By.CSS_SELECTOR, "#bars .bar")[0].text
        check("the top class first: sneaker", first.startswith("sneaker"), first)
        check("the overlay drawn: a 224-wide PNG", driver.execute_script(
            "return document.getElementById('overlay').naturalWidth") == 224)
        check("the overlay says its method", driver.find_element(By.ID, "overlay-caption").text == "rollout")
        check("no error shown", not driver.find_element(By.ID, "error").is_displayed())
        if screenshot:
            driver.execute_script("document.getElementById('file').hidden = true;")
            check("the screenshot saved", driver.save_screenshot(screenshot) and
                  os.path.getsize(screenshot) > 10000, screenshot)

        before = overlay_src()
        Select(driver.find_element(By.ID, "model")).select_by_value("cnn_resnet8_fmnist")
        wait.until(lambda d: overlay_src() != before and
                   d.find_element(By.ID, "overlay-caption").text == "gradcam")
        check("switching model explains again, by Grad-CAM",
              driver.find_element(By.ID, "overlay-caption").text == "gradcam")

        bad = os.path.join(profile, "notes.png")
        with open(bad, "w") as f:
            f.write("not an image at all")
        choose(bad)
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        text = driver.find_element(By.ID, "error").text
        check("a file that is not an image: the server's reason on the page",
              "not an image vit reads" in text, text)
        origins = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
            ".filter(n => !n.startsWith(location.origin) && !n.startsWith('blob:'))")
        check("nothing loaded from another origin", origins == [], str(origins))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

print(f"serve_page: {len(failures)} failed")
sys.exit(1 if failures else 0)
